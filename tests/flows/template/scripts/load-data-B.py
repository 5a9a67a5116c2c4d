import sys

import pandas as pd

from flows import output, read_input

path = read_input("data_path", sys.argv[1] if len(sys.argv) > 1 else None)
frame = pd.read_csv(path)
print(f"read {len(frame)} rows from {path}")
frame.to_csv(output("datasetB"), index=False)

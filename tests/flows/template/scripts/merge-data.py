import pandas as pd

from flows import output, read_input

a = pd.read_csv(read_input("datasetA", is_file=True))
b = pd.read_csv(read_input("datasetB", is_file=True))
merged = pd.concat([a, b], ignore_index=True).drop_duplicates("id")
print(f"merged {len(a)} + {len(b)} rows into {len(merged)}")
merged.to_csv(output("merged_data"), index=False)

import pickle

import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

from flows import output, read_input

frame = pd.read_csv(read_input("processed_data", is_file=True))
trees = int(read_input("num_estimators", "100"))
features = frame.drop(columns=["id", "label"])
x_train, x_test, y_train, y_test = train_test_split(features, frame["label"], test_size=0.25, random_state=0)
model = RandomForestClassifier(n_estimators=trees, random_state=0).fit(x_train, y_train)
accuracy = model.score(x_test, y_test)
print(f"trained {trees} trees: hold-out accuracy {accuracy:.3f}")
with open(output("model"), "wb") as handle:
    pickle.dump(model, handle)
with open(output("accuracy"), "w") as handle:
    handle.write(f"{accuracy}\n")

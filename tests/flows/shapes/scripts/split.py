"""Split the dataset's readings into pieces, one CSV each, in a directory output."""
import os

pieces = int(open("/workflow/inputs/pieces").read())
values = open("/mnt/data/readings/readings.csv").read().split()[1:]
assert os.path.isfile("/mnt/data/snapshots/readings/2/readings.csv"), "the pinned snapshot is not mounted"
os.makedirs("/workflow/outputs/parts")
for piece in range(pieces):
    with open(f"/workflow/outputs/parts/part-{piece}.csv", "w") as out:
        out.write("value\n" + "".join(f"{v}\n" for v in values[piece::pieces]))
with open("/workflow/outputs/rows", "w") as out:
    out.write(str(len(values)))
print(f"split {len(values)} readings into {pieces} parts")

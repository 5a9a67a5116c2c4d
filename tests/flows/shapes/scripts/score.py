"""Score one piece: the mean of its readings, and whether it passes the threshold."""
index = int(open("/workflow/inputs/index").read())
threshold = float(open("/workflow/inputs/threshold").read())
strict = open("/workflow/inputs/strict").read() == "true"
values = [float(v) for v in open(f"/workflow/inputs/parts/part-{index}.csv").read().split()[1:]]
score = sum(values) / len(values)
passed = score > threshold if strict else score >= threshold
open("/workflow/outputs/score", "w").write(f"{score}\n")
open("/workflow/outputs/passed", "w").write("1" if passed else "0")  # copilot reads 1/0 as a bool too
print(f"part {index}: {len(values)} readings, score {score:.3f}, passed {passed}")

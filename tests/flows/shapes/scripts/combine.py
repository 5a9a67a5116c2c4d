"""Combine the pieces' scores: a report file and one output of each primitive type."""
from datetime import datetime, timedelta


def read(name):
    return open(f"/workflow/inputs/{name}").read()


scores = [float(read(f"score{i}")) for i in range(3)]
passed = [read(f"passed{i}") == "true" for i in range(3)]
since = datetime.fromisoformat(read("since").replace("Z", "+00:00"))
hours, rest = read("window").split("h")
minutes = rest.split("m")[0]
window = timedelta(hours=int(hours), minutes=int(minutes))
with open("/workflow/outputs/report", "w") as out:
    out.write("part,score,passed\n" + "".join(f"{i},{s},{p}\n" for i, (s, p) in enumerate(zip(scores, passed))))
outputs = {"total": read("rows"), "mean": repr(sum(scores) / len(scores)), "passed": str(all(passed)).lower(),
           "label": f"{read('label')}-combined", "finished": (since + window).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "window": f"{2 * int(hours)}h{2 * int(minutes)}m0s"}
for name, text in outputs.items():
    open(f"/workflow/outputs/{name}", "w").write(text + "\n")
print("combined", outputs)

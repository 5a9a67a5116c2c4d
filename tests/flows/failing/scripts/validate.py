import sys

lines = open("/workflow/inputs/table").read().splitlines()[1:]
missing = [n for n, line in enumerate(lines, 2) if not line.split(",")[0]]
print(f"checked {len(lines)} rows")
if missing:
    message = f"table: {len(missing)} rows have no id (lines {', '.join(map(str, missing))})"
    open("/workflow/outputs/_ERROR", "w").write(message)
    print(message, file=sys.stderr)
    sys.exit(1)
open("/workflow/outputs/valid", "w").write(str(len(lines)))

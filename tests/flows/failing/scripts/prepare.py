rows = int(open("/workflow/inputs/rows").read())
with open("/workflow/outputs/table", "w") as out:
    out.write("id,value\n" + "".join(f"{'' if i % 2 else i},{i * 1.5}\n" for i in range(rows)))
print(f"prepared {rows} rows")

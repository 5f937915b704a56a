"""Write a small, deterministic set of temperature readings (station,day,celsius)."""

import random
import sys

rng = random.Random(42)
with open(sys.argv[1], "w", encoding="utf-8") as out:
    out.write("station,day,celsius\n")
    for day in range(1, 366):
        for station in ("north", "south", "east"):
            reading = rng.gauss(12 if station != "north" else 6, 8)
            # a few sensor glitches for the cleaning step to drop
            out.write(f"{station},{day},{'NaN' if rng.random() < 0.01 else f'{reading:.2f}'}\n")

"""Count the words of one sample (run by Snakemake's script: directive)."""

from collections import Counter

snakemake = globals()["snakemake"]  # injected by Snakemake
min_length = int(snakemake.params.min_length)

with open(snakemake.input[0]) as handle:
    words = [w for w in handle.read().split() if len(w) >= min_length]

with open(snakemake.output[0], "w") as out:
    out.write(f"# {snakemake.params.label} words of {min_length}+ letters\n")
    for word, count in sorted(Counter(words).items()):
        out.write(f"{word}\t{count}\n")

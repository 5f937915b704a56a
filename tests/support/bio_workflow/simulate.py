"""Simulated inputs for the bioinformatics-shaped workflow: no downloads, the same bytes every time.

A random reference (two contigs) and, per sample, single-end reads drawn from it with a few
homozygous SNPs of the sample's own and a small sequencing error rate. Small enough that
bwa, samtools and bcftools take well under a second per job; big enough (about 10x
coverage) that bcftools calls the SNPs.

    python simulate.py DEST [--samples A B] [--reads 2000]
"""

from __future__ import annotations

import argparse
import os
import random

CONTIGS = {"chr1": 12_000, "chr2": 8_000}
READ_LENGTH = 100
ERROR_RATE = 0.002
_COMPLEMENT = str.maketrans("ACGT", "TGCA")


def reference(rng: random.Random) -> dict[str, str]:
    return {name: "".join(rng.choice("ACGT") for _ in range(length)) for name, length in CONTIGS.items()}


def sample_genome(genome: dict[str, str], rng: random.Random, snps: int = 12) -> dict[str, str]:
    mutated = {name: list(seq) for name, seq in genome.items()}
    for _ in range(snps):
        name = rng.choice(sorted(mutated))
        position = rng.randrange(200, len(mutated[name]) - 200)  # away from the ends: covered
        mutated[name][position] = rng.choice([b for b in "ACGT" if b != mutated[name][position]])
    return {name: "".join(seq) for name, seq in mutated.items()}


def reads(genome: dict[str, str], rng: random.Random, count: int, sample: str) -> str:
    lines = []
    names = sorted(genome)
    weights = [len(genome[n]) for n in names]
    for number in range(count):
        name = rng.choices(names, weights)[0]
        start = rng.randrange(0, len(genome[name]) - READ_LENGTH)
        read = genome[name][start:start + READ_LENGTH]
        if rng.random() < 0.5:
            read = read.translate(_COMPLEMENT)[::-1]
        read = "".join(rng.choice("ACGT") if rng.random() < ERROR_RATE else base for base in read)
        lines.append(f"@{sample}_{number}\n{read}\n+\n{'I' * READ_LENGTH}\n")
    return "".join(lines)


def write(dest: str, samples: list[str], count: int) -> None:
    rng = random.Random(20261204)
    genome = reference(rng)
    os.makedirs(os.path.join(dest, "samples"), exist_ok=True)
    with open(os.path.join(dest, "genome.fa"), "w") as out:
        for name, seq in genome.items():
            out.write(f">{name}\n")
            out.writelines(seq[i:i + 60] + "\n" for i in range(0, len(seq), 60))
    for sample in samples:
        own = sample_genome(genome, random.Random(f"{sample}-snps"))
        with open(os.path.join(dest, "samples", f"{sample}.fastq"), "w") as out:
            out.write(reads(own, random.Random(f"{sample}-reads"), count, sample))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest")
    parser.add_argument("--samples", nargs="+", default=["A", "B"])
    parser.add_argument("--reads", type=int, default=2000)
    args = parser.parse_args()
    write(args.dest, args.samples, args.reads)


if __name__ == "__main__":
    main()

# The tutorial's plot step as text: variant qualities by bin, and each sample's QC summary.
import os

snakemake = globals()["snakemake"]  # given by Snakemake's script: directive

quals = []
with open(snakemake.input.vcf) as vcf:
    for line in vcf:
        if not line.startswith("#"):
            quals.append(float(line.split("\t")[5]))
with open(snakemake.output[0], "w") as out:
    out.write(f"variants\t{len(quals)}\n")
    for low in range(0, 250, 50):
        count = sum(low <= q < low + 50 for q in quals)
        out.write(f"qual {low}-{low + 49}\t{'#' * count}\n")
    for qc in snakemake.input.qc:
        with open(os.path.join(qc, "flagstat.txt")) as flagstat:
            mapped = next(line for line in flagstat if " mapped (" in line)
        out.write(f"{os.path.basename(qc)}\t{mapped.split(' + ')[0]} mapped\n")

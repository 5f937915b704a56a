// A three-process pipeline for nextflow-ledger (see README.md and docs/nextflow.md):
// split each text into words, count them per file, and report; the counts and the report
// are published by publishDir.
params.input = "${projectDir}/data/*.txt"
params.title = 'word counts'

process SPLIT {
  tag "${text.baseName}"

  input:
  path text

  output:
  path "${text.baseName}.words"

  script:
  """
  tr -s ' ' '\\n' < ${text} > ${text.baseName}.words
  """
}

process COUNT {
  tag "${words.baseName}"
  publishDir 'results/counts', mode: 'copy'

  input:
  path words

  output:
  path "${words.baseName}.count"

  script:
  """
  printf '%s\\t%s\\n' ${words.baseName} \$(wc -l < ${words}) > ${words.baseName}.count
  """
}

process REPORT {
  publishDir 'results', mode: 'copy'

  input:
  path counts

  output:
  path 'report.txt'

  script:
  """
  echo '# ${params.title}' > report.txt
  sort ${counts} >> report.txt
  """
}

workflow {
  SPLIT(channel.fromPath(params.input)) | COUNT | collect | REPORT
}

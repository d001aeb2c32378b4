"""Raw behavior logs -> the Parquet dataset of `mba_dist.data.format`, and synthetic datasets.

    readers.py    text (TSV/CSV/space, .gz) and Parquet logs -> raw id columns, with errors
                  naming the file and line
    ids.py        the id type of users and items (--ids auto|int|str) and the dense ids
    prepare.py    `mba-dist prepare`: id maps, dedup, the validation carve, warnings, meta.json
    synthetic.py  `mba-dist synth`: planted-preference data with true and false clicks

May import: numpy, pyarrow, `mba_dist.data.format`, `mba_dist.data.pairs`, `mba_dist.files`,
`mba_dist.errors`. Nothing of training (mba_dist never imports data_prep; the CLI in `launch`
uses both).
"""

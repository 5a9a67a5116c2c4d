"""Stage load_b: snapshot source B (input data_path) as a typed, checked Parquet file (datasetB).

The snapshot pins the source as it was at this moment (its sha256, row count and load time ride in the
file's metadata), so later stages never see a source that changed under them.
"""

from stageflow.runtime import contract, dataset, sources


def main() -> None:
    contract.main(lambda tree: sources.load(tree, "datasetB"), outputs=["datasetB"])


if __name__ == "__main__":
    dataset.own_process()
    main()

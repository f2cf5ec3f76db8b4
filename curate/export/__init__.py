"""Export: turn a curated workspace into the datasets people train on (Parquet, NVlabs zip, imagefolder)."""

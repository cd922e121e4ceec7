"""Reading and writing data: text decoding, Parquet and Delta tables."""

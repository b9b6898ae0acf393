"""`kessai-pos`, the command-line register built on the terminal SDK (``kessai.client``)."""

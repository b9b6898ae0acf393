"""The terminal SDK and the kessai-pos register, against a real `kessai serve`."""

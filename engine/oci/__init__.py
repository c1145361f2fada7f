"""OCI images: references, registries and archives (through skopeo), layers unpacked into a
content-addressed cache of read-only erofs files, and the image's run config."""

"""Images: references, the registry client, manifests, the blob and layer
store, unpacking, pulls and image garbage collection."""

"""Generated protobuf modules of the NRI wire contract (``nri_pb2``,
``ttrpc_pb2``; never edited by hand: ``python -m rktlet.nri.api.generate``)."""

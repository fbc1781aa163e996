"""zfabric.util: helpers beside the core API, under the names Ray users know."""

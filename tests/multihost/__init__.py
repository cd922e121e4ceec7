"""A cluster of several hosts on one machine, in network namespaces, with a host cut off."""

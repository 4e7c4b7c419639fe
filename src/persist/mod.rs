//! Snapshots: the on-disk format, the dataset directories, writing and loading.

"""Default places on disk, named once. Imports nothing: the command line's parser reads it."""

#: Where ``prepare`` writes ``<name>/{train,evaluate,test,all}.csv`` + ``features.json`` and training reads them.
MANIFEST_DIR = "data_manifests"

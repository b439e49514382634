"""The supervisor, configuration and the `shardline` command line."""

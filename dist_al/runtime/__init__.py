"""The Ray layer: the cluster session, ShardWorker actors, the sharded pool, selection on Ray, job submission."""

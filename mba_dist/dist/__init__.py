"""Processes: the process group a worker is in, local gloo groups, and Ray.

    collective.py  rank_world, collective_device (the one place that decides where collective
                   tensors live), all_reduce_sum
    local.py       a 1-rank gloo group on loopback, W local ranks in spawned processes,
                   share_cores
    ray.py         init_ray (join RAY_ADDRESS or the embedded loopback cluster), the worker
                   log level, input errors out of Ray's wrapping, run_ray_ranks
    reaper.py      watch: the embedded cluster's processes end with the driver, even a killed one

May import: torch.distributed, Ray, `mba_dist.errors`. Nothing here knows what the ranks run.
"""

"""The zoo on a Ray cluster (``bench --cluster``): one bench per node, every host in one MLflow store and one table.

* :mod:`signflow_zoo.cluster.nodes` -- the cluster's nodes as named bench hosts, and which ones a command selects;
* :mod:`signflow_zoo.cluster.runs` -- the cluster run in MLflow and the cells (host, preset, backend) it has done;
* :mod:`signflow_zoo.cluster.task` -- what runs on a node: probe, weights (trained once), the node's benches;
* :mod:`signflow_zoo.cluster.driver` -- the command: plan, dispatch, faults, the cluster document.

Ray is an optional dependency (``pip install 'signflow-zoo[ray]'``); nothing here imports it until a command runs.
"""

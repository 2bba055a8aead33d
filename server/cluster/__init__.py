"""Several framehub processes on one Redis (``[cluster] redis_url``): what they share, and how.

Imported only when ``redis_url`` is set: a single process needs none of it, nor the redis
package.
:class:`server.cluster.node.ClusterNode` assembles the parts: the link to Redis
(:mod:`~server.cluster.link`), session ids (:mod:`~server.cluster.ids`), live cameras
(:mod:`~server.cluster.cameras`), batch job records (:mod:`~server.cluster.jobs`), download locks
(:mod:`~server.cluster.locks`), and python-socketio's Redis manager, which carries Socket.IO emits
to rooms across the processes.
"""

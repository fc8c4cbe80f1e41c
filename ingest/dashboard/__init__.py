"""The operator dashboard: a sub-application under /dashboard, mounted by the receiver or run alone.

It holds nothing of its own: it reads PostgreSQL and Redis through the resources of the
application it is mounted in (`request.config_dict`), so one pool serves both.
"""

"""What runs on a web host: the agent daemon and the commands the controller runs there over SSH (stage, have,
verify, prune, check-url, export). It needs redis-py and Jinja2, nothing of the control side
(tests/unit/test_host_imports.py holds it to that).
"""

"""The admin HTTP API and dashboard (``python -m ops serve``); see :mod:`ops.admin.app`."""

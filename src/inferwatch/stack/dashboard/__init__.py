"""The built-in dashboard page, served by ``inferwatch dashboard`` and ``inferwatch up``."""

from inferwatch.stack.dashboard.app import DashboardConfig, create_dashboard_app, describe

__all__ = ["DashboardConfig", "create_dashboard_app", "describe"]

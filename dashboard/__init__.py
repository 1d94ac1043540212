"""The node's web pages: the archive in charts, studies, datasets, cohorts, label review and
the node's health, in Chinese and English (:mod:`dashboard.pages`)."""

from dashboard.pages import PAGES, Page, dashboard_router

__all__ = ["PAGES", "Page", "dashboard_router"]

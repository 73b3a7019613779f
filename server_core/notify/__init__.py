"""Notification channels (webhook, ntfy, SMTP): validating their settings,
formatting and sending alerts, and delivering them with retries per channel.

The service in ``server_core.services.notifications`` ties these to the
store and the event bus; nothing here touches the database directly except
``records``, which runs on the store thread.
"""

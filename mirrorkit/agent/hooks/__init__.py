"""Hooks (``on_promote``, ``on_demote``, ``on_role_change``) come with failover; nothing here
yet.
"""

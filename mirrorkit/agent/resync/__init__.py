"""Initial mirror and difference resync: compare modes, manifests, both halves of the
conversation.
"""

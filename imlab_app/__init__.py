"""The top floor: the `imlab` command and the jobs it runs (compare, the chat, the
stage controls). It may import every other part of the project; nothing imports it.
"""

"""The Agent Server's store index function, named from langgraph.json as `gems.memory.index.py:embed_texts`.

langgraph.json names an embedding function by a `.py:` path: one with a slash is a file relative to the working
folder (so `langgraph dev --config elsewhere/langgraph.json` would miss it), one without is imported as a module.
This package's `py` module makes the dotted name importable from any folder.
"""

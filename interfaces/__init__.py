"""Ways in: the `gems` CLI, the LangServe app, the LangChain tool and the `gems bench` runner, over `gems.graph`."""

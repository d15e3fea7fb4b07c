"""The bundled int8 model server (its own ASGI app and process, `wardgate model-server`).

Not built yet (issue 3). It will import nothing from the moderation side of wardgate.
"""

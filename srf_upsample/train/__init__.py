"""The bundled trainer (needs the ``[train]`` extra): the paper's three stages on COCO-format data."""

"""The source side: it knows OpenEdge SQL and the drivers that read it, nothing about the warehouse."""

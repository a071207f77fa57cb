"""What a run leaves behind and how it is read: the record format and its schema (``records``),
the machine and code facts in every record (``environment``), and the table of all records
(``aggregate``)."""

"""Free text: the second-method identifier checker shared by reports, DICOM descriptors and
text read from pixels (all three are gates on what leaves, so they use one checker)."""

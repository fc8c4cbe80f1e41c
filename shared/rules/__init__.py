"""Pure validation and normalisation rules shared by the receiver and the workers."""

"""gin: where config files are found, how they are parsed and checked, what is reported."""

module lcbench

go 1.19

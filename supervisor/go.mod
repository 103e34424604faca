module paddock/supervisor

go 1.19

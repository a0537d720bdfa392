module github.com/gatehouse-dmz/gatehouse/bench

go 1.26

"""The ground floor: errors, keys, configs, files, statistics, tasks, number formats and the
fault-model protocol, which every other part of jaxfault builds on and which import nothing above them."""

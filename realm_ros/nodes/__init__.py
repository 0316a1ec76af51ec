"""realm_ros.nodes"""

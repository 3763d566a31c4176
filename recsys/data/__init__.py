"""recsys/data"""
